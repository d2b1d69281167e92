"""The tiny synthetic world: everything that lets the real code paths run on a CPU without downloads.

    family      the tiny model family's shapes (torch-free)
    components  the tiny SigLIP tower, tokenizer and Qwen2 LLMs written as component checkpoints
    pretrain    pre-training those components on the world (as the real ones come pre-trained)
    scenes      scenes of coloured shapes and digits, and the questions asked about them
    standins    the ten benchmark stand-ins' rows (``WRITERS``: one writer per benchmark)
    world       the world on disk: images, the training sets, the stand-ins, a manifest
    score       quick scoring of a model on the stand-ins with lmms-eval's task functions
    tasks       lmms-eval task YAMLs that point the stock tasks at the stand-ins

It imports the rest of the package; only the CLI, the workflow (``family``) and the tests import
it. docs/world.md describes the world and why it is shaped as it is.
"""
