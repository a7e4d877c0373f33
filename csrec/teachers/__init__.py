"""Teacher building blocks: SoftRec's popularity logits, the m-teacher ensemble (CSRec-M, CSRec-D)
and CSRec-T's learned noise matrix. Training the teachers is csrec.train's job; these are pure
functions and one module."""

from csrec.teachers.ensemble import ENSEMBLE_METHODS, ensemble_probs, ensemble_weights
from csrec.teachers.noise_matrix import PARAMETRIZATIONS, NoiseMatrix
from csrec.teachers.popularity import popularity_logits

__all__ = ["ENSEMBLE_METHODS", "PARAMETRIZATIONS", "NoiseMatrix", "ensemble_probs", "ensemble_weights",
           "popularity_logits"]
