# Data: the synthetic world (tiny mode). Real mode reads data.captions/instruct/images as given.


rule world:
    """Images, the caption and instruction sets, and the ten benchmark stand-ins."""
    output:
        marker(L.world_dir()),
    log:
        L.log("world"),
    benchmark:
        L.timing("world")
    threads: res("world", "threads", 1)
    resources:
        mem_mb=res("world", "mem_mb", 4000),
        runtime=res("world", "runtime", 30),
    params:
        out=lambda wc, output: parent(output[0]),
        seed=config.get("world", {}).get("seed", 0),
        size=config.get("world", {}).get("size", "tiny"),
    shell:
        "$LLAVAKD_PY -m llavakd.cli synth-world --out {params.out} --seed {params.seed} --size {params.size} --overwrite > {log} 2>&1"
