# Fixtures for every test in the workspace (ogelkit_plugins, register_plugin, anyio_backend ...).
pytest_plugins = ["ogelkit.testing.plugin"]
