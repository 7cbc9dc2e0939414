"""Readers for real data sets: CoNLL-U and CoNLL-2000 (tagging), UNIPEN (handwriting)."""
