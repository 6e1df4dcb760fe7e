"""⑧ Trie-constrained beam search and full-ranking metrics (S2GR.md "Inference", "Evaluation protocol").

Public API: PrefixTrie, constrained_beam_search, BeamResult, recall_at_k, ndcg_at_k, evaluate_batch,
merge_sums, finalize_metrics.
"""
from s2gr_ray.evaluation.beam_search import BeamResult, constrained_beam_search
from s2gr_ray.evaluation.evaluate import evaluate_batch, finalize_metrics, merge_sums
from s2gr_ray.evaluation.metrics import ndcg_at_k, recall_at_k
from s2gr_ray.evaluation.trie import PrefixTrie

__all__ = ["PrefixTrie", "constrained_beam_search", "BeamResult", "recall_at_k", "ndcg_at_k", "evaluate_batch",
           "merge_sums", "finalize_metrics"]
