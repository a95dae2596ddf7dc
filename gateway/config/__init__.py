"""The command line and the configuration it builds: read by the master before anything starts."""
