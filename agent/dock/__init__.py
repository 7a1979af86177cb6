"""The dock daemon: its sessions per slot, its wiring from the configuration,
sd_notify, and the uplink to the platform."""
