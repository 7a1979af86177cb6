"""The demo dock: sample footage, a simulated camera and the local broker it starts."""
