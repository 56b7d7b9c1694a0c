"""A causal language model trained by the Hugging Face `Trainer`, as its examples run it,
on a tiny GPT-2 built from a config with random weights (nothing is downloaded:
HF_HUB_OFFLINE=1): `TrainingArguments` with a linear schedule and warm-up, gradient
accumulation over 2 micro-batches, evaluation during training.

Expected: --max_steps optimizer steps; `learning_rate`, `gradient_accumulation_steps`,
`warmup_steps` recorded from TrainingArguments, the model config's `n_layer`;
`optimizer.lr` the configured LR although the first step's is warm-up's.
"""

import argparse
import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch
from torch.utils.data import Dataset
from transformers import GPT2Config, GPT2LMHeadModel, PrinterCallback, Trainer, TrainingArguments


class PatternTokens(Dataset):
    def __init__(self, n, length, vocab):
        g = torch.Generator().manual_seed(n)
        self.rows = [(torch.arange(length) * 3 + int(torch.randint(0, vocab, (1,), generator=g))) % vocab
                     for _ in range(n)]

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return {"input_ids": self.rows[i], "labels": self.rows[i]}


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--max_steps", type=int, default=6)
    parser.add_argument("--learning_rate", type=float, default=5e-3)
    cli = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(5)
    config = GPT2Config(vocab_size=64, n_positions=32, n_embd=32, n_layer=2, n_head=2)
    model = GPT2LMHeadModel(config)
    with tempfile.TemporaryDirectory() as out:
        training_args = TrainingArguments(
            output_dir=out, max_steps=cli.max_steps, learning_rate=cli.learning_rate, warmup_steps=2,
            lr_scheduler_type="linear", per_device_train_batch_size=4, gradient_accumulation_steps=2,
            eval_strategy="steps", eval_steps=3, per_device_eval_batch_size=4, logging_steps=1,
            save_strategy="no", report_to=[], use_cpu=True, seed=5, disable_tqdm=True,
            dataloader_num_workers=0)
        trainer = Trainer(model=model, args=training_args, train_dataset=PatternTokens(64, 16, 64),
                          eval_dataset=PatternTokens(8, 16, 64))
        trainer.remove_callback(PrinterCallback)  # its log lines carry timings; the losses are printed below
        result = trainer.train()
        losses = [round(entry["loss"], 4) for entry in trainer.state.log_history if "loss" in entry]
    print(f"trained {result.global_step} steps, losses {losses}")
