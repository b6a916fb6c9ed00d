"""One recipe per dataset: loads its splits and sets up the task, network and manifest facts."""
