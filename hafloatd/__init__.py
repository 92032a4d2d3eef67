"""hafloatd: a long-running DigitalOcean reserved-IP failover daemon for Pacemaker clusters."""

__version__ = "0.1.0"
