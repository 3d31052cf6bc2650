"""The offline demo: a tiny bilingual CLIP trained on CPU on scikit-learn's digits."""
