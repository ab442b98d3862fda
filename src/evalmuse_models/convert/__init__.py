"""Conversions of official checkpoints to Hugging Face folders (``evalmuse convert ...``)."""

from .fga_blip2 import ConversionReport, convert_fga_blip2, lavis_to_hf_state_dict

__all__ = ["ConversionReport", "convert_fga_blip2", "lavis_to_hf_state_dict"]
