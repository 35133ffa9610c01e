"""Attention over encoder states: additive (Bahdanau et al. 2015) and multiplicative (Luong et al. 2015).

Every module scores a decoder query against all source positions, turns the scores into
weights with a softmax over the *real* tokens only, and returns the weighted sum of the keys
(the context vector). The part of the score that depends only on the source is computed once
per sentence by ``precompute(keys)`` and kept in the encoder output, so a decoding step only
pays for the query side. ``forward`` takes one query per sentence (B, Dq) or a whole sequence
of them (B, T, Dq) when the queries are known in advance (Luong without input feeding).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import nn


class Attention(nn.Module, ABC):
    """Shared masking, softmax and weighted sum; subclasses only define the score."""

    def precompute(self, keys: torch.Tensor) -> torch.Tensor:
        """(B, S, Dk) -> the source side of the score, computed once per source sentence."""
        return keys

    @abstractmethod
    def score(self, query: torch.Tensor, proj_keys: torch.Tensor) -> torch.Tensor:
        """(B, T, Dq) queries x precomputed keys -> (B, T, S) unnormalised scores."""

    def forward(
        self, query: torch.Tensor, keys: torch.Tensor, proj_keys: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """query (B, Dq) or (B, T, Dq); keys (B, S, Dk); mask (B, S), True = real token.

        Returns context (B, [T,] Dk) and weights (B, [T,] S). Padding gets a score of -inf,
        so its weight is exactly 0 and the weights sum to 1 over the real tokens.
        """
        single = query.dim() == 2
        q = query.unsqueeze(1) if single else query
        scores = self.score(q, proj_keys).masked_fill(~mask.unsqueeze(1), float("-inf"))
        weights = torch.softmax(scores, dim=-1)
        context = torch.bmm(weights, keys)
        return (context.squeeze(1), weights.squeeze(1)) if single else (context, weights)


class AdditiveAttention(Attention):
    """Bahdanau: ``v^T tanh(W q + U k)``, a one-hidden-layer MLP, so query and key sizes may differ.
    ``U k`` does not depend on the decoder and is precomputed."""

    def __init__(self, query_dim: int, key_dim: int, attn_dim: int) -> None:
        super().__init__()
        self.w = nn.Linear(query_dim, attn_dim, bias=False)
        self.u = nn.Linear(key_dim, attn_dim)
        self.v = nn.Linear(attn_dim, 1, bias=False)

    def precompute(self, keys: torch.Tensor) -> torch.Tensor:
        return self.u(keys)  # (B, S, A)

    def score(self, query: torch.Tensor, proj_keys: torch.Tensor) -> torch.Tensor:
        hidden = torch.tanh(self.w(query).unsqueeze(2) + proj_keys.unsqueeze(1))  # (B, T, S, A)
        return self.v(hidden).squeeze(-1)


class DotAttention(Attention):
    """Luong dot: ``q^T k``, no parameters. Only defined when query and key sizes agree (e.g. a
    unidirectional encoder with the decoder's hidden size); otherwise use GeneralAttention."""

    def __init__(self, query_dim: int, key_dim: int) -> None:
        super().__init__()
        if query_dim != key_dim:
            raise ValueError(f"dot attention needs equal query and key sizes, got {query_dim} and {key_dim}; "
                             "use general attention (q^T W k), which maps one onto the other")

    def score(self, query: torch.Tensor, proj_keys: torch.Tensor) -> torch.Tensor:
        return torch.bmm(query, proj_keys.transpose(1, 2))


class GeneralAttention(Attention):
    """Luong general: ``q^T W k``, a learned bilinear form; ``W k`` is precomputed, leaving a dot
    product per step. Works for any pair of sizes (e.g. a bidirectional encoder)."""

    def __init__(self, query_dim: int, key_dim: int) -> None:
        super().__init__()
        self.w = nn.Linear(key_dim, query_dim, bias=False)

    def precompute(self, keys: torch.Tensor) -> torch.Tensor:
        return self.w(keys)  # (B, S, Dq)

    def score(self, query: torch.Tensor, proj_keys: torch.Tensor) -> torch.Tensor:
        return torch.bmm(query, proj_keys.transpose(1, 2))
