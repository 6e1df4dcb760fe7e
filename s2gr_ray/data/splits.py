"""Readers of the prepared data used by later stages (tokenizer, training, evaluation)."""
from s2gr_ray.data.prepare import item_categories, load_data_manifest, training_sequences

__all__ = ["item_categories", "load_data_manifest", "training_sequences"]
