"""`maest bench`: how fast MAEST runs on this machine and what each speed-up costs in accuracy (`measure`: the
measurements, returned as one results dict; `report`: that dict as a text or Markdown table; `ray_benchmark`: the
Ray Data engine against the one-process engine), the GPU check (`gpu_check`), and the similarity benchmark
(`similarity_benchmark`, run as a script). The recorded results are the repository's, in `results/` (not shipped)."""
