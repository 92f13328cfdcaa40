"""Load generator: simulates the fleet (over HTTP, asynchronous HTTP or MQTT) and the EnergyGrid vendor API."""
