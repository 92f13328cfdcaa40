"""The EnergyGrid vendor cloud: its protocol, the platform's pull connector and a mock vendor server."""
