"""The fleet's apps as module attributes, for Flower's deployment runtime: a Flower App
whose pyproject.toml names `facto_edge.fleet.apps:serverapp` and
`facto_edge.fleet.apps:clientapp` as its components runs them on a SuperLink and its
SuperNodes (docs/fleet.md). Both read the FleetConfig from the run config, the server
also "run-dir"; each SuperNode is started with --node-config "partition-id=I"."""

from facto_edge.fleet.client import client_app
from facto_edge.fleet.server import server_app

clientapp = client_app()
serverapp = server_app()
