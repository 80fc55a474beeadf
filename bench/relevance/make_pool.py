"""Build the judging pool: per profile, the union of the top 20 of several systems.

    .venv/bin/python bench/relevance/make_pool.py               # writes pool.json
    .venv/bin/python bench/relevance/make_pool.py --sheet DIR   # and a judging sheet per profile

Systems (over all 380 seed papers, sent history ignored):

* ``current``: the project's ``rank_papers`` with default settings;
* ``bm25``: plain BM25 over title + abstract with a simple analyzer;
* ``tfidf``: TF-IDF cosine between the profile's words and title + abstract;
* ``expanded``: ``rank_papers`` on the profile plus the synonyms and expansions of
  :data:`EXPANSIONS` (weight 0.7), to catch papers a vocabulary-aware ranker would find;
* ``description``: BM25 with the profile's one-sentence description as the query, to catch
  papers that meet the need in words the profile does not use.

The judging sheet lists each profile's pooled papers sorted by key, with title and abstract
and no trace of which system retrieved them, so that judging is blind to the systems.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_relevance import (  # noqa: E402
    POOL_FILE,
    Context,
    _excluded_mask,
    _index,
    _order,
    bm25_scores,
    load_papers,
    load_profiles,
    query_terms,
    system_bm25,
    system_current,
    system_tfidf,
    tokens,
)

from newsletter.domain import Paper  # noqa: E402

DEPTH = 20

#: Per profile: what a vocabulary-aware ranker would also match (synonyms, spelled-out
#: acronyms, close variants). Written with the profiles, before any result was looked at.
EXPANSIONS: dict[str, tuple[str, ...]] = {
    "llm-compression": (
        '"large language model"',
        "quantized",
        '"post-training quantization"',
        '"weight quantization"',
        '"structured pruning"',
        '"low-rank"',
        "compression",
        '"sparse"',
        '"mixed precision"',
        '"inference efficiency"',
        '"speculative decoding"',
        '"early exit"',
    ),
    "dense-retrieval": (
        '"dense retriever"',
        '"neural retrieval"',
        '"information retrieval"',
        '"document ranking"',
        '"passage retrieval"',
        '"sentence embeddings"',
        '"text embeddings"',
        '"embedding model"',
        '"retrieval-augmented"',
        '"bi-encoder"',
        '"cross-encoder"',
        '"question answering"',
    ),
    "speech": (
        '"automatic speech recognition"',
        '"speech representation"',
        '"self-supervised speech"',
        "HuBERT",
        "acoustic",
        "spoken",
        '"speech translation"',
        "voice",
        '"speech synthesis"',
        "whisper",
    ),
    "continual-learning": (
        '"continual pretraining"',
        '"continual pre-training"',
        '"incremental learning"',
        '"lifelong learning"',
        '"task-incremental"',
        '"class incremental"',
        '"continual"',
        "stability",
        "plasticity",
    ),
    "diffusion-images": (
        '"diffusion model"',
        '"diffusion transformer"',
        '"image synthesis"',
        '"image editing"',
        '"denoising"',
        '"sampling steps"',
        '"consistency model"',
        '"stable diffusion"',
        '"generative model"',
        "T2I",
    ),
    "vlm": (
        '"vision language model"',
        '"multimodal large language model"',
        '"multimodal model"',
        '"image-text"',
        '"language-image pre-training"',
        "LVLM",
        '"visual question answering"',
        "multimodal",
    ),
    "masked-ssl-vision": (
        '"masked image modelling"',
        '"masked autoencoders"',
        '"self-supervised learning"',
        '"representation learning"',
        '"visual representation"',
        '"masked modeling"',
        "ViT",
        '"visual pre-training"',
        "DINO",
        "SimCLR",
    ),
    "pretraining-data": (
        '"pre-training data"',
        '"training data"',
        '"data curation"',
        '"data filtering"',
        '"data mixtures"',
        '"data-efficient"',
        '"synthetic"',
        '"data pruning"',
        '"pre-training corpus"',
        '"large language model"',
    ),
    "long-context": (
        '"long-context"',
        '"long sequences"',
        '"context length"',
        '"context extension"',
        '"rotary position"',
        '"position interpolation"',
        '"long text"',
        '"long documents"',
        '"sequence length"',
        '"efficient attention"',
    ),
    "robot-learning": (
        "robotic",
        "robots",
        '"robot manipulation"',
        '"behavior cloning"',
        '"visuomotor"',
        '"action sequences"',
        '"dexterous"',
        '"navigation policy"',
        '"embodied AI"',
        '"control policy"',
    ),
    "3d-vision": (
        '"3D reconstruction"',
        '"neural radiance fields"',
        '"point clouds"',
        '"3D generation"',
        '"3D representation"',
        '"depth estimation"',
        '"4D"',
        "voxel",
        '"multi-view"',
        '"3D object detection"',
    ),
    "code-models": (
        '"code models"',
        '"source code"',
        '"code understanding"',
        '"code pre-training"',
        '"code pretraining"',
        '"language models of code"',
        "coding",
        '"software"',
        '"fill-in-the-middle"',
    ),
    "multilingual": (
        '"cross-lingual transfer"',
        '"low-resource languages"',
        "translation",
        '"under-resourced"',
        '"non-English"',
        '"many languages"',
        "bilingual",
        '"language adaptation"',
        "tokenizer",
    ),
    "rl-llm": (
        '"reinforcement learning from human feedback"',
        '"policy optimization"',
        "PPO",
        "DPO",
        '"reward"',
        '"preference optimization"',
        '"RL fine-tuning"',
        '"self-correct"',
        '"tool use"',
        '"large language models"',
    ),
    "distillation": (
        '"distil"',
        '"student model"',
        '"teacher model"',
        '"self-distillation"',
        '"distilled"',
        '"compact model"',
        '"model compression"',
        "compression",
    ),
    "adversarial-safety": (
        '"adversarial attacks"',
        '"adversarial examples"',
        '"adversarial robustness"',
        "robust",
        '"failure modes"',
        '"harmful"',
        '"misinformation"',
        '"hallucination"',
        '"backdoor"',
        '"toxicity"',
    ),
}


def expanded_text(profile_id: str, text: str) -> str:
    extra = [f"{term}^0.7" for term in EXPANSIONS.get(profile_id, ())]
    return ", ".join([text, *extra])


def system_expanded(profile_id: str) -> Callable[[list[Paper], str, Context], list[str]]:
    def run(papers: list[Paper], text: str, ctx: Context) -> list[str]:
        return system_current(papers, expanded_text(profile_id, text), ctx)

    return run


def system_description(description: str) -> Callable[[list[Paper], str, Context], list[str]]:
    def run(papers: list[Paper], text: str, ctx: Context) -> list[str]:
        ix = _index(papers)
        words = query_terms(text)[0]
        for w in tokens(description):
            words[w] = words.get(w, 0.0) + 0.5
        return _order(papers, bm25_scores(ix, words), _excluded_mask(ix, []))

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sheet", type=Path, help="write a blind judging sheet per profile here")
    args = parser.parse_args()
    papers = load_papers()
    by_key = {p.key: p for p in papers}
    pool: dict[str, dict[str, dict[str, int]]] = {}
    for prof in load_profiles():
        ctx = Context(prof.id)
        systems = {
            "current": system_current,
            "bm25": system_bm25,
            "tfidf": system_tfidf,
            "expanded": system_expanded(prof.id),
            "description": system_description(prof.description),
        }
        entries: dict[str, dict[str, int]] = {}
        for name, system in systems.items():
            for rank, key in enumerate(system(papers, prof.text, ctx)[:DEPTH], 1):
                entries.setdefault(key, {})[name] = rank
        pool[prof.id] = dict(sorted(entries.items()))
        if args.sheet:
            args.sheet.mkdir(parents=True, exist_ok=True)
            lines = [f"# {prof.id}: {prof.description}", ""]
            for key in sorted(entries):
                p = by_key[key]
                lines += [f"## {key}", f"T: {p.title}", f"A: {p.abstract}", ""]
            (args.sheet / f"{prof.id}.md").write_text("\n".join(lines), encoding="utf-8")
    POOL_FILE.write_text(json.dumps(pool, indent=1) + "\n", encoding="utf-8")
    sizes = {pid: len(v) for pid, v in pool.items()}
    print(f"pool: {sum(sizes.values())} pairs; per profile: {sizes}")


if __name__ == "__main__":
    main()
