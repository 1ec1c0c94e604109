"""Frozen-feature probes of any Encoder: linear (logistic regression solved to convergence), kNN, attentive
(one-query cross-attention head), low-shot; their features cached on disk; ``probe.json``.

Modules: ``features`` (what is extracted), ``cache`` (where it is kept), ``splits`` (validation split, low-shot
draws), ``linear``, ``knn``, ``attentive``, ``lowshot`` (the probes), ``data`` and ``sources`` (what is probed, on
what), ``evaluate`` (the protocol end to end, shared by the end-of-run probe and ``jepaflow probe``). Every
protocol is stated in docs/probes.md.
"""
