"""Eager torch: the Plan run op by op by the reference interpreter (what ``bench`` times as the
"torch" row: a framework without graph compilation or custom kernels)."""
