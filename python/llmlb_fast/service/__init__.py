"""The routing service and its parts: breakers, canary split, telemetry, alerts,
events and config hot reload. Transports reach the router only through
:class:`~llmlb_fast.service.routing.RoutingService`."""
