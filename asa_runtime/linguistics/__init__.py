"""Linguistics: causal analyzer (segmentation, UPOS tagger, lexicon) -> bonding rules -> AttentionPlan."""

# Recorded in every checkpoint's config.json (with the artifacts' sha256): bump when segmentation, rules
# or policy change what a plan contains, since a model must be planned exactly as it was trained.
__version__ = "1"
