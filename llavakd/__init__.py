"""llavakd: reproduce LLaVA-KD end to end."""
__version__ = "0.1.0"
