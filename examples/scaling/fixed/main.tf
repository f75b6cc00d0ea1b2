# Fixed capacity: the zone runs the sum of its data centers' maximums whatever the
# demand (here 4 processes on 2 local machines). For debugging and QA, where a known
# number of servers matters more than cost. No buffer rule is needed.
#
#   terraform apply -var fleet_id=flt-…

terraform {
  required_providers {
    fleetform = {
      source = "fleetform/fleetform"
    }
  }
}

# endpoint and token come from FLEETFORM_ENDPOINT and FLEETFORM_TOKEN.
provider "fleetform" {}

variable "fleet_id" {
  description = "The fleet whose server processes the zone runs (a fleetform_fleet id)."
  type        = string
}

resource "fleetform_zone" "qa" {
  fleet_id                 = var.fleet_id
  name                     = "qa"
  scaling_mode             = "fixed"
  initial_server_processes = 4

  data_center {
    name                 = "local-1"
    location             = "local"
    max_server_processes = 4

    machine_model {
      instance_type         = "local"
      processes_per_machine = 2
    }
  }
}
