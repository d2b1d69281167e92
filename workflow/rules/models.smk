# Models: the tiny stand-ins for pretrained SigLIP and base Qwen (tiny mode), and each run's
# initial LLaVA (frozen tower + fresh projector + base LLM), one per LLM and seed.


# components.only_study_llms: pre-train the study's LLMs only. Unset, the rule's parameters and command
# are what they were before the option existed, so a finished tree's components job stays finished.
COMPONENT_LLMS = (
    {"llms": ",".join(STUDY.llms())} if TINY and C.components.only_study_llms else {}
)


rule components:
    """Tiny SigLIP pre-trained on the world until its probe passes; tiny LLMs LM-pre-trained on it."""
    input:
        WORLD,
    output:
        marker(L.components_dir()),
    log:
        L.log("components"),
    benchmark:
        L.timing("components")
    threads: res("components", "threads")
    resources:
        mem_mb=res("components", "mem_mb"),
        runtime=res("components", "runtime"),
    params:
        **COMPONENT_LLMS,
        out=lambda wc, output: parent(output[0]),
        world=lambda wc, input: parent(input[0]),
        seed=C.components.seed,
        vision_steps=C.components.vision_steps,
        llm_steps=C.components.llm_steps,
        min_probe=C.components.min_probe,
    shell:
        "OMP_NUM_THREADS={threads} $LLAVAKD_PY -m llavakd.cli tiny-models --out {params.out} --world {params.world} "
        "--seed {params.seed} --vision-steps {params.vision_steps} --llm-steps {params.llm_steps} "
        "--min-probe {params.min_probe}"
        + (" --llms {params.llms}" if COMPONENT_LLMS else "")
        + " --overwrite > {log} 2>&1"


rule init_model:
    """A LLaVA checkpoint assembled from the vision tower and a base LLM (projector seeded)."""
    input:
        [marker(L.components_dir())] if TINY else [],
    output:
        marker(L.init_dir("{llm}", "{seed}")),
    log:
        L.log("init", "{llm}", "s{seed}"),
    benchmark:
        L.timing("init", "{llm}", "s{seed}")
    threads: res("build", "threads")
    resources:
        mem_mb=res("build", "mem_mb"),
        runtime=res("build", "runtime"),
    params:
        out=lambda wc, output: parent(output[0]),
        args=lambda wc: " ".join(STUDY.build_args(wc.llm, int(wc.seed))),
    shell:
        "OMP_NUM_THREADS={threads} $LLAVAKD_PY -m llavakd.cli build {params.args} --out {params.out} --overwrite > {log} 2>&1"
