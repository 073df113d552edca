with source as (

    select * from {{ source('raw', 'plans') }}

),

renamed as (

    select
        plan_id,
        plan_name,
        {{ cents_to_dollars('monthly_price_cents') }} as monthly_price,
        billing_interval,
        is_active,
        _loaded_at

    from source

)

select * from renamed
