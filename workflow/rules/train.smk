# Training: one job per stage of a chain. A chain's prefix is its own run, so variants that share
# stages share jobs. Checkpoints live in the run folder next to final/ and are not declared
# outputs: Snakemake removes a failed job's outputs, never its checkpoints, and the rerun resumes
# from the newest complete one (llavakd train --resume). A job's time comes from its price; SLURM
# warns it before the limit, it stops at a checkpoint with exit 75, and a retry resumes it.


rule job_config:
    """One training job's validated stage config (built and checked when the DAG is planned)."""
    output:
        L.config_file("{llm}", "{seed}", "{chain}"),
    log:
        L.log("configs", "{llm}", "s{seed}", "{chain}"),
    localrule: True
    params:
        text=lambda wc: STUDY.stage_config_text(wc.llm, int(wc.seed), wc.chain),
    run:
        atomic_write_text(output[0], params.text)
        atomic_write_text(log[0], f"wrote {output[0]}\n")


rule train:
    """One stage (llavakd.stages.STAGES) of one chain for one LLM and seed, from its config file."""
    input:
        unpack(lambda wc: STUDY.train_inputs(wc.llm, int(wc.seed), wc.chain)),
        world=WORLD,
    output:
        L.final_marker("{llm}", "{seed}", "{chain}"),
    log:
        L.log("train", "{llm}", "s{seed}", "{chain}"),
    benchmark:
        L.timing("train", "{llm}", "s{seed}", "{chain}")
    threads: res("train", "threads")
    resources:
        **TRAIN_SLURM,
        mem_mb=res("train", "mem_mb"),
        runtime=lambda wc: SCHEDULE.train(wc.llm, int(wc.seed), wc.chain).minutes,
        slurm_extra=STOP_WARNING,
    params:
        cmd=train_cmd,
    shell:
        "OMP_NUM_THREADS={threads} {params.cmd} --config {input.config} --resume >> {log} 2>&1"
