# Auto scaling with one buffer rule: always keep 5 idle server processes ready for new
# sessions, never fewer than 10 processes in all, never more than 600.
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

resource "fleetform_zone" "single_rule" {
  fleet_id                 = var.fleet_id
  name                     = "eu-central"
  scaling_mode             = "auto"
  initial_server_processes = 10

  buffer_rule {
    available_servers = 5
  }

  data_center {
    name                 = "aws-eu-central-1"
    location             = "eu-central-1"
    max_server_processes = 600

    machine_model {
      instance_type         = "c6i.2xlarge"
      processes_per_machine = 6
    }
  }
}
