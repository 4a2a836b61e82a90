"""The checks behind `tracer.diagnose`: each looks at one verdict timeline and may return one
finding. Pure: no I/O. `tracer.diagnose` runs them and states their precedence."""
