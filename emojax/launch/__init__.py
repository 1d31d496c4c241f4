"""What turns a command line into a run: the shared flags and building a StageContext from them,
the checks made before anything loads, and the pipeline's stage order. The top layer: it may import
every other package, and nothing in emojax imports it."""
