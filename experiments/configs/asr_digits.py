"""A small Wav2Vec2-CTC trained from scratch on espeak-ng's spoken digit and letter sequences, a
quarter of an hour on 2 CPU cores; run by experiments/asr_digits.py (which also scores character
error rates), or on its own:

polyformer train experiments/configs/asr_digits.py
python experiments/asr_digits.py [--quick]

Data: `SpokenDigitsData` (polyformer/training/data/speech.py): 2-4 symbols of 0-9 and A-Z read
by ten espeak-ng voices at random speeds and pitches; 10% of the sequences held out. The exported
model (runs/asr_digits/model) is a Wav2Vec2ForCTC checkpoint with its preprocessor and tokenizer
files: `polyformer transcribe runs/asr_digits/model speech.wav`.
"""

from polyformer.models.wav2vec2 import Wav2Vec2Config
from polyformer.training.config import RunConfig
from polyformer.training.data.speech import SpokenDigitsData
from polyformer.training.optim import OptimizerConfig


def config() -> RunConfig:
    # vocab_size and the special token ids are set by the data.
    model = Wav2Vec2Config(
        hidden_size=96,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=192,
        # A light feature encoder with the official total stride (320 samples, 20 ms a frame);
        # its first layer strides 10 samples, not 5, as its activations cost the most.
        conv_dim=(32, 48, 64, 96, 96),
        conv_kernel=(20, 8, 4, 4, 4),
        conv_stride=(10, 4, 2, 2, 2),
        conv_bias=True,
        feat_extract_norm="layer",
        do_stable_layer_norm=True,
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4,
        hidden_dropout=0.0,
        activation_dropout=0.0,
        attention_dropout=0.0,
        feat_proj_dropout=0.0,
        final_dropout=0.0,
        layerdrop=0.0,
        mask_time_prob=0.0,
        ctc_loss_reduction="mean",
        ctc_zero_infinity=True,
    )
    return RunConfig(
        model=model,
        data=SpokenDigitsData(num_utterances=2000, min_symbols=2, max_symbols=4),
        objective="ctc",
        optimizer=OptimizerConfig(learning_rate=3e-3, warmup_steps=50, weight_decay=0.01),
        steps=3600,
        batch_size=8,
        eval_every=100,
        eval_batches=4,
        checkpoint_every=200,
        keep_checkpoints=100,
        log_every=20,
        out_dir="runs/asr_digits",
    )
