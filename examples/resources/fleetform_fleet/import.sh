# A fleet is imported by its id.
terraform import fleetform_fleet.example flt-0123456789abcdef
