# A bare-metal machine is imported by its id; its agent_token is read back from fleetformd.
terraform import fleetform_bare_metal_machine.example bm-0123456789abcdef
