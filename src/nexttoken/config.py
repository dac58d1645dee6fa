"""The model's shape as one frozen dataclass; every family is a set of values for these fields."""

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int
    d_model: int
    n_layer: int
    n_head: int
    d_ff: int
    n_kv_head: int = 0  # 0: as many key/value heads as query heads (no grouping)
    head_dim: int = 0  # 0: d_model // n_head
    max_seq_len: int = 2048
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    causal: bool = True  # decoders see only the past; encoders attend both ways
    tie_embeddings: bool = True  # output head shares the token embedding matrix
    norm: str = "rms"  # "rms" (Llama) or "layer" (BERT)
    pre_norm: bool = True  # norm before each sublayer (GPT-2, Llama) or after the residual sum (BERT)
    mlp: str = "swiglu"  # "swiglu" (Llama), "gelu" (BERT: up, GELU, down), "relu" (T5 v1.0), "gated-gelu" (T5 v1.1)
    # "rope" (rotary, in attention), "learned" or "sinusoidal" (absolute, added to embeddings), or "relative"
    # (T5: a learned bias on attention scores per bucket of key - query distance)
    positions: str = "rope"
    bias: bool = False  # biases on the linear layers
    type_vocab_size: int = 0  # token-type (segment) embeddings, as BERT has; 0: none
    embed_norm: bool = False  # a norm right after the embeddings (BERT)
    self_attention: str = "attention"  # the self-attention sublayer of each block (see model.transformer)
    relative_buckets: int = 32  # positions="relative" (T5): buckets of key - query distance
    relative_max_distance: int = 128  # distances from this on share the last bucket
    scale_attention: bool = True  # divide attention scores by sqrt(head_dim); T5 folds it into its weights
    embed_scale: float = 1.0  # token embeddings are multiplied by this (BART's scale_embedding, Marian: sqrt(d_model))
    head_scale: float = 1.0  # final hidden states are multiplied by this before the head (T5, tied: d_model ** -0.5)
    head_bias: bool = False  # a bias on the output scores (BART's final_logits_bias)
    n_encoder_layer: int = 0  # > 0: the decoder of an encoder-decoder (T5, BART), with cross-attention in each block
    qkv_bias: bool = False  # biases on the query, key and value projections only (Qwen 2)
    qk_norm: bool = False  # an RMSNorm over each head's queries and keys, before the rotation (Qwen 3, Gemma 3)
    norm_sublayer_outputs: bool = False  # each sublayer's output normed before the residual add (Gemma 2, 3)
    attention_scale: float = 0.0  # factor on query-key products; 0: as scale_attention says (Gemma 3 sets its own)
    sliding_window: int = 0  # a sliding layer's query sees this many latest positions, itself included; 0: none
    # which layers slide (Gemma 3 interleaves them with global ones); (): every layer, when sliding_window
    sliding_layers: tuple[bool, ...] = ()
    rope_local_theta: float = 0.0  # the rotary base of sliding layers (Gemma 3); 0: rope_theta
    # the rotary frequencies of layers at rope_theta are divided by these, one per pair of dimensions
    # (Llama 3's scaling, linear scaling); (): none
    rope_freq_factors: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if self.n_kv_head == 0:
            object.__setattr__(self, "n_kv_head", self.n_head)
        if self.head_dim == 0:
            object.__setattr__(self, "head_dim", self.d_model // self.n_head)
        if self.n_head % self.n_kv_head:
            raise ValueError(f"n_head ({self.n_head}) must be a multiple of n_kv_head ({self.n_kv_head})")
        if self.positions == "rope" and self.head_dim % 2:
            raise ValueError(f"head_dim ({self.head_dim}) must be even for rotary embeddings")
        if self.sliding_window and not self.sliding_layers:
            object.__setattr__(self, "sliding_layers", (True,) * self.n_layer)
        if self.sliding_layers and (len(self.sliding_layers) != self.n_layer or not self.sliding_window):
            raise ValueError(f"sliding_layers needs a sliding_window and one entry per layer ({self.n_layer})")
        if self.rope_freq_factors and len(self.rope_freq_factors) != self.head_dim // 2:
            raise ValueError(f"rope_freq_factors needs one factor per pair of dimensions ({self.head_dim // 2})")
        for name, value, allowed in (("norm", self.norm, ("rms", "layer")),
                                     ("mlp", self.mlp, ("swiglu", "gelu", "relu", "gated-gelu")),
                                     ("positions", self.positions, ("rope", "learned", "relative", "sinusoidal"))):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")

    def window(self, layer: int) -> int:
        """How many latest positions a query of `layer` sees (itself included); 0: every one."""
        return self.sliding_window if self.sliding_layers and self.sliding_layers[layer] else 0

    def layer_kind(self, layer: int) -> str:
        """"sliding" or "global": layers of one kind share their rotations and attention mask."""
        return "sliding" if self.window(layer) else "global"
