"""Load generator: simulates the fleet and the EnergyGrid vendor API, over HTTP only."""
