"""`nexttoken train --objective mlm` beside transformers' BertForMaskedLM trained by its Trainer with
DataCollatorForLanguageModeling, at the same number of steps, in one run.

    .venv/bin/python benchmarks/bench_mlm.py [--steps 800] [--corpus shakespeare]

Ours runs the recipe from raw text (WordPiece training and tokenisation included in its wall time,
reported apart). The reference then trains a BertForMaskedLM of the same shape from its own random
initialisation on the same windows in the same order ([CLS] + seq_len - 2 tokens + [SEP], from our
prepared data folder and tokenizer), masked by the collator with the recipe's rates (15 %; 80/10/10),
with the same batch, peak and final learning rate, warmup, cosine decay, weight decay, AdamW betas,
clipping and autocast precision (its model keeps BERT's dropout of 0.1). Both are scored on the
same held-out masked batches: the share of masked tokens whose highest-scoring token is the
original one. Each also fills "Good night, sweet [MASK]."."""

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch

from nexttoken.encoder.sentence import load_encoder
from nexttoken.tokenizer import Tokenizer
from nexttoken.train.data import TokenLoader
from nexttoken.train.metrics import read_metrics
from nexttoken.train.mlm import MaskedBatches, MaskedLMRecipe, run_masked_lm
from nexttoken.train.objectives import IGNORE
from nexttoken.train.run import with_overrides

PROMPT = "Good night, sweet [MASK]."


def reference(recipe: MaskedLMRecipe, run_dir: Path, val: list[dict]) -> dict:
    from transformers import (AutoTokenizer, BertConfig, BertForMaskedLM, DataCollatorForLanguageModeling, Trainer,
                              TrainingArguments)

    data_dir, config = run_dir / "data", recipe.train
    accumulation = config.accumulation(1)
    tokenizer = Tokenizer.from_hf_folder(data_dir)
    windows = TokenLoader(data_dir, "train", config.micro_batch, recipe.seq_len - 2, recipe.seed)
    rows = [{"input_ids": [tokenizer.bos_id, *row, tokenizer.eos_id]}
            for _ in range(config.max_steps * accumulation) for row in next(windows)["input_ids"].tolist()]
    torch.manual_seed(recipe.seed)
    model = BertForMaskedLM(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=recipe.d_model,
                                       num_hidden_layers=recipe.n_layer, num_attention_heads=recipe.n_head,
                                       intermediate_size=recipe.d_ff, max_position_embeddings=recipe.seq_len))
    masking = recipe.masking
    collator = DataCollatorForLanguageModeling(AutoTokenizer.from_pretrained(run_dir),
                                               mlm_probability=masking.probability,
                                               mask_replace_prob=masking.mask_share,
                                               random_replace_prob=masking.random_share, seed=recipe.seed)
    arguments = TrainingArguments(
        output_dir=str(run_dir.parent / "reference"), per_device_train_batch_size=config.micro_batch,
        gradient_accumulation_steps=accumulation,
        max_steps=config.max_steps, learning_rate=config.lr, lr_scheduler_type="cosine_with_min_lr",
        lr_scheduler_kwargs={"min_lr": config.min_lr}, warmup_steps=config.warmup_steps,
        weight_decay=config.weight_decay, adam_beta1=config.betas[0], adam_beta2=config.betas[1],
        max_grad_norm=config.grad_clip, bf16=config.precision == "bf16", use_cpu=True, save_strategy="no",
        eval_strategy="no", report_to=[], seed=recipe.seed, dataloader_num_workers=0, disable_tqdm=True,
        logging_steps=max(1, config.max_steps // 6))
    trainer = Trainer(model=model, args=arguments, train_dataset=rows, data_collator=collator)
    trainer.get_train_dataloader = lambda: torch.utils.data.DataLoader(  # in order, as ours reads them
        rows, batch_size=config.micro_batch, collate_fn=collator)
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    model.eval()
    right = total = 0
    with torch.no_grad():
        for batch in val:
            chosen = batch["labels"] != IGNORE
            scores = model(input_ids=batch["input_ids"]).logits[chosen]
            right += int((scores.argmax(-1) == batch["labels"][chosen]).sum())
            total += int(chosen.sum())
        ids = torch.tensor([load_encoder(run_dir).encode(PROMPT)])
        position = int((ids[0] == tokenizer.mask_id).nonzero()[0, 0])
        best = model(input_ids=ids).logits[0, position].topk(5).indices.tolist()
    return {"accuracy": right / total, "seconds": seconds, "tokens_per_second": len(rows) * recipe.seq_len / seconds,
            "fill": [tokenizer.decode([i]) for i in best]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=MaskedLMRecipe().train.max_steps)
    parser.add_argument("--corpus", default="shakespeare")
    parser.add_argument("--keep", type=Path, help="Keep our run folder here.")
    args = parser.parse_args()
    recipe = with_overrides(MaskedLMRecipe, corpus=args.corpus, max_steps=args.steps, progress=False)
    folder = Path(tempfile.mkdtemp(prefix="bench-mlm-"))
    run_dir = args.keep or folder / "ours"
    try:
        start = time.perf_counter()
        result = run_masked_lm(recipe, run_dir)
        total = time.perf_counter() - start
        ours = {"accuracy": read_metrics(run_dir)[-1]["eval_masked_accuracy"], "seconds": result.train.seconds,
                "tokens_per_second": result.train.step * recipe.train.global_batch * recipe.seq_len / result.train.seconds,
                "fill": [c.text for c in load_encoder(run_dir).fill(PROMPT, 5)[0]]}
        tokenizer = Tokenizer.from_hf_folder(run_dir / "data")
        val_stream = MaskedBatches(run_dir / "data", "val", recipe.train.micro_batch, recipe, tokenizer, shuffle=False)
        val = [next(val_stream) for _ in range(min(recipe.eval_batches, val_stream.windows.n_windows // recipe.train.micro_batch))]
        theirs = reference(recipe, run_dir, val)
    finally:
        if args.keep is None:
            shutil.rmtree(folder, ignore_errors=True)
    print(f"{args.corpus}, {args.steps} steps of {recipe.train.global_batch} x {recipe.seq_len} tokens, "
          f"{result.parameters:,} parameters; ours from raw text to exported folder: {total:.0f} s")
    print("\n| run | held-out masked-token accuracy | training s | tokens/s | fill 'Good night, sweet [MASK].' |")
    print("|---|---:|---:|---:|---|")
    for name, r in (("nexttoken", ours), ("transformers Trainer + DataCollatorForLanguageModeling", theirs)):
        print(f"| {name} | {r['accuracy']:.1%} | {r['seconds']:.0f} | {r['tokens_per_second']:,.0f} | "
              f"{', '.join(r['fill'])} |")
    print(json.dumps({"ours": ours, "theirs": theirs}))


if __name__ == "__main__":
    main()
