# Predictive buffer: instead of a fixed number of idle servers, hold capacity for the
# session requests forecast over one machine boot time (from the last minutes' arrivals
# and the same time the day before), plus a small safety margin. Capacity is bought
# before the evening ramp-up or a launch spike arrives, not after.
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

resource "fleetform_zone" "predictive" {
  fleet_id                 = var.fleet_id
  name                     = "eu-central"
  initial_server_processes = 6

  # Forecast over the boot delay + 3 servers.
  buffer_rule {
    available_predicted = 3
  }

  data_center {
    name                 = "aws-eu-central-1"
    location             = "eu-central-1"
    max_server_processes = 1200

    machine_model {
      instance_type         = "c6i.2xlarge"
      processes_per_machine = 6
    }
  }
}
