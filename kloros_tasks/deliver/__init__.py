"""Delivery to ChemBus: the bridge from the ``kloros:questions`` stream, its ZeroMQ
link, and the XSUB/XPUB proxy for hosts without KLoROS's own.

May import ``state`` and the ground modules."""
