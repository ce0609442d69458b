"""SeViLA: self-chained image-language model for video localization and QA."""
__version__ = "0.1.0"
