"""ogelkit-neon: the Neon backend for ogelkit."""
