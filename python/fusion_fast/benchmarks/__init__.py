"""The benchmark suite that `fusion-fast bench` runs, shipped with the package so that it runs from any
folder on a plain install. One module per benchmark, each runnable alone as
`python -m fusion_fast.benchmarks.<name> --help`: index (build, open, random access against the usual
JSON loaders), scaling (threads and file size), mixture (stage resolution, lengths, samplers, memory,
export), dataloader (torch DataLoader throughput), check (file existence, whole checks), gpu (host to
device copies), vision (`static_hd` image preprocessing against FUSION's) and images (extracting image
archives against serving them from an image store, and image reads through a DataLoader); memory
holds `private_memory`, which they use to measure processes. Peers that are not installed are skipped
and reported."""
