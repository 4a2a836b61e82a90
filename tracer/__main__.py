from tracer.cli import run

run()
