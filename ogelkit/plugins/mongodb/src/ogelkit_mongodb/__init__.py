"""ogelkit-mongodb: OP_MSG front door and per-tenant databases on MongoDB or FerretDB."""

from ogelkit_mongodb.backend import MongoBackend
from ogelkit_mongodb.listener import MongoFrontDoor
from ogelkit_mongodb.options import MongoOptions

__all__ = ["MongoBackend", "MongoFrontDoor", "MongoOptions"]
