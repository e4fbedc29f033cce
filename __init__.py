"""skyfix: GPS-free position fixes for drones from a downward camera and a satellite map."""
__version__ = "0.1.0"
