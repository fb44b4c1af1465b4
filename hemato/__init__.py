"""HematoVision Edge: white blood cell classification at the microscope."""
__version__ = "0.1.0"
