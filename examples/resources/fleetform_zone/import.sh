# A zone is imported by its id. After import, wait_for_capacity is true and no
# timeouts are set; add them to the configuration as you need.
terraform import fleetform_zone.example zone-0123456789abcdef
