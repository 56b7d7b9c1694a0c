"""Share recorded runs through the tools teams already use: TensorBoard event files and
an MLflow tracking server. Both read a run dir (never the live program), so any stored
run can be exported later with `ptdiag runs export`."""
