"""ogelkit-convex: the Convex backend for ogelkit."""
