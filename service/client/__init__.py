"""The client library robot controllers use, under the server package's name: everything here
is actionmesh_client's (service/client_dist/, the thin `actionmesh-client` distribution).
New code imports `actionmesh_client` directly."""

from actionmesh_client import *  # noqa: F403
from actionmesh_client import __all__ as __all__
