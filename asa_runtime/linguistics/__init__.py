"""Linguistics: causal analyzer (segmentation, UPOS tagger, lexicon) -> bonding rules -> AttentionPlan."""
