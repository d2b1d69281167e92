# Training: one job per stage of a chain. A chain's prefix is its own run, so variants that share
# stages share jobs. Checkpoints live in the run folder next to final/ and are not declared
# outputs: Snakemake removes a failed job's outputs, never its checkpoints, and the rerun resumes
# from the newest complete one (llavakd train --resume).


rule train:
    """One stage (pt, sft, dpt, dft) of one chain for one LLM and seed."""
    input:
        unpack(lambda wc: STUDY.train_inputs(wc.llm, int(wc.seed), wc.chain)),
        world=WORLD,
    output:
        f"{R}/runs/{{llm}}/s{{seed}}/{{chain}}/final/COMPLETE",
    log:
        f"{R}/logs/train/{{llm}}/s{{seed}}/{{chain}}.log",
    benchmark:
        f"{R}/benchmarks/train/{{llm}}/s{{seed}}/{{chain}}.tsv"
    threads: res("train", "threads", 1)
    resources:
        gpu=res("train", "gpus", 0),
        mem_mb=res("train", "mem_mb", 8000),
        runtime=res("train", "runtime", 60),
    params:
        cmd=train_cmd,
        stage=lambda wc: wc.chain.split("--")[-1].split("~")[0],
        model=lambda wc, input: parent(input.model),
        teacher=lambda wc: (
            f"teacher={STUDY.teacher_dir(wc.llm, wc.chain)}"
            if STUDY.teacher_dir(wc.llm, wc.chain)
            else ""
        ),
        out=lambda wc, output: parent(parent(output[0])),
        overrides=lambda wc: " ".join(
            STUDY.train_overrides(wc.llm, int(wc.seed), wc.chain)
        ),
    shell:
        "OMP_NUM_THREADS={threads} {params.cmd} --stage {params.stage} model={params.model} {params.teacher} "
        "output_dir={params.out} {params.overrides} --resume >> {log} 2>&1"
