# Two data centers of different priority: scale-up fills Frankfurt (priority 0) first
# and only overflows into Ireland (priority 1) once Frankfurt's maximum is reached;
# scale-in empties Ireland first. Data centers of equal priority would share the idle
# processes evenly, and placement would break the tie by player latency.
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

resource "fleetform_zone" "priorities" {
  fleet_id                 = var.fleet_id
  name                     = "europe"
  initial_server_processes = 12
  placement_strategy       = "pack"

  buffer_rule {
    available_percent = 20
  }

  data_center {
    name                 = "frankfurt"
    location             = "eu-central-1"
    priority             = 0
    max_server_processes = 600

    machine_model {
      instance_type         = "c6i.2xlarge"
      processes_per_machine = 6
    }
  }

  data_center {
    name                 = "ireland"
    location             = "eu-west-1"
    priority             = 1
    max_server_processes = 300

    machine_model {
      instance_type         = "c6i.2xlarge"
      processes_per_machine = 6
    }
  }
}
