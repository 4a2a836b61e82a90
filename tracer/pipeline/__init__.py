"""The stages composed: the probe's steps (probe, analysis) driven through the one HANDLERS table
(driver, drive/), --prove-fix, the evidence bundle and its offline replay, doctor's facts."""
